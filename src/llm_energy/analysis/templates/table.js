// The per-model tables, drawn from the embedded data (report_data.table_spec and the cells'
// records), PAGE rows at a time: headline metrics first, then the settings (the study's
// fixed axes with class `fixed`: hidden unless asked for). Click a header to sort by its
// column (numbers as numbers, text as text; no value last either way). Rows of the cells the
// sliders mark per model get the classes best-energy (★) and best-speed (▲).
window.llmEnergyTables=function(D){
var T=D.table,PAGE=25,tables=[],MI={};
Object.keys(D.metrics).forEach(function(m,i){MI[m]=i;});  // c.values: in D.metrics' order
function esc(s){return String(s).replace(/[&<>"']/g,function(ch){return '&#'+ch.charCodeAt(0)+';';});}
function fmt(v,d){return v.toFixed(d);}
function badge(kind,src){
  if(kind==='timing')return '<span class="badge measured" title="measured (host clock)">M</span>';
  if(kind==='flops')return '<span class="badge estimate" title="estimate: analytic FLOP count / measured time">E</span>';
  if(!src||src==='—')return '<span class="badge estimate" title="no energy sensor">E</span>';
  if(src.indexOf('estimate')>=0)return '<span class="badge estimate" title="estimate: '+esc(src)+'">E</span>';
  return '<span class="badge measured" title="measured: '+esc(src)+'">M</span>';
}
function sourceBadge(src){
  if(!src||src==='—')return '<span class="badge estimate">no energy sensor</span>';
  var kind=src.indexOf('estimate')>=0?'estimate':'measured';
  return '<span class="badge '+kind+'">'+(src===kind?kind:kind+': '+esc(src))+'</span>';
}
function td(v,html,cls){return '<td'+(cls?' class="'+cls+'"':'')+' data-v="'+esc(v===null||v===undefined?'':v)+'">'+html+'</td>';}
// Each column: [header, class ("t": text, "t fixed": a fixed axis), cell -> [sort value, html]].
function columns(settings){
  var cols=[['backend','t',function(c){return [c.backend,esc(c.backend)];}]];
  T.columns.forEach(function(m,k){
    cols.push([m[1],'',function(c,x){
      if(!c.ok)return k===0?null:['',''];
      var v=c.values[MI[m[0]]];
      if(!v||v[0]===null)return ['','n/a'];
      var h=fmt(v[0],m[2]);
      if(v[1]!==null&&v[2]!==null)h+=' <span class="ci" title="95% interval across cycles (docs/methodology.md)">('+fmt(v[1],m[2])+'–'+fmt(v[2],m[2])+')</span>';
      var b=(x.b||{})[m[0]];
      if(b)h+=' <span class="ci" title="pooled over requests '+(b[2]===null?'—':fmt(b[2],m[2]))+'; 95% bootstrap interval">['+fmt(b[0],m[2])+', '+fmt(b[1],m[2])+']</span>';
      return [v[0],h+badge(m[3],c.energy_source)];}]);
  });
  var fixed={};(T.fixed||[]).forEach(function(f){fixed[f]=1;});
  settings.forEach(function(s,i){cols.push([s,fixed[s]?'t fixed':'t',function(c,x){var v=x.s[i];return [v==='—'?'':v,esc(v)];}]);});
  cols.push(['cycles','t',function(c,x){return c.ok?[c.cycles,esc(c.cycles)+(x.n?' <span class="warn">('+esc(x.n)+')</span>':'')]:['',''];}]);
  cols.push(['energy','t',function(c){return c.ok?[c.energy_source,sourceBadge(c.energy_source)]:['',''];}]);
  cols.push(['Pareto','t',function(c){var f=!!c.frontier.latency;return c.ok?[f?1:0,f?'<span class="badge pareto">frontier</span>':'']:['',''];}]);
  cols.push(['cell','t',function(c,x,picked){var id=esc(c.id);
    return [c.id,c.ok?'<input type="checkbox" class="pick" data-cell="'+id+'" title="compare"'+(picked.indexOf(c.id)>=0?' checked':'')+'> <code>'+id+'</code> <button class="detail" data-cell="'+id+'">detail</button>':'<code>'+id+'</code>'];}]);
  return cols;
}
function compare(a,b,asc){
  var x=a===null||a===undefined?'':String(a),y=b===null||b===undefined?'':String(b);
  if(x===''||y==='')return (x==='')-(y==='');
  var nx=Number(x),ny=Number(y),c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
  return asc?c:-c;
}
T.models.forEach(function(ms){
  var box=document.querySelector('div.model-table[data-model="'+CSS.escape(ms[0])+'"]');if(!box)return;
  var t={model:ms[0],cols:columns(ms[1]),page:0,sort:null,asc:true,keep:null,picked:[],marked:{energy:{},speed:{}}};
  t.cells=D.cells.filter(function(c){return c.source==='measured'&&c.model===ms[0];});
  // Sort values of every column, computed once.
  t.rows=t.cells.map(function(c){var x=T.rows[c.id]||{s:[]};return {c:c,x:x};});
  var table=document.createElement('table');table.className='sortable';
  var head=table.createTHead().insertRow();
  t.cols.forEach(function(col,i){var th=document.createElement('th');if(col[1])th.className=col[1];th.textContent=col[0];
    th.addEventListener('click',function(){
      t.asc=!(t.sort===i&&t.asc);t.sort=i;
      head.querySelectorAll('th').forEach(function(h){delete h.dataset.order;});
      th.dataset.order=t.asc?'asc':'desc';t.page=0;draw(t);});
    head.appendChild(th);});
  t.body=table.createTBody();t.pager=document.createElement('div');t.pager.className='pager';
  box.appendChild(table);box.appendChild(t.pager);
  tables.push(t);
});
function cellsOf(t,r){
  var out=[];
  for(var i=0;i<t.cols.length;i++){
    var got=t.cols[i][2](r.c,r.x,t.picked);
    if(got===null){  // a failed row: its error in the first metric's column
      out.push('<td class="t failed" data-v="">failed: '+esc(r.c.error)+'</td>');continue;}
    out.push(td(got[0],got[1],t.cols[i][1]));
  }
  return out.join('');
}
function draw(t){
  var rows=t.keep?t.rows.filter(function(r){return t.keep(r.c);}):t.rows.slice();
  if(t.sort!==null){var col=t.cols[t.sort][2];
    rows.forEach(function(r){var g=col(r.c,r.x,t.picked);r.v=g?g[0]:'';});
    rows.sort(function(a,b){return compare(a.v,b.v,t.asc);});}
  var pages=Math.max(1,Math.ceil(rows.length/PAGE));if(t.page>=pages)t.page=pages-1;
  var part=rows.slice(t.page*PAGE,(t.page+1)*PAGE);
  var html=part.map(function(r){var k=(t.marked.energy[r.c.id]?' best-energy':'')+(t.marked.speed[r.c.id]?' best-speed':'');
    return '<tr'+(k?' class="'+k.slice(1)+'"':'')+' data-cell="'+esc(r.c.id)+'">'+cellsOf(t,r)+'</tr>';}).join('');
  // The same page as before (most tables at a filter change): the DOM left as it is.
  var pagerKey=t.page+'/'+pages+'/'+rows.length;
  if(html===t.html&&pagerKey===t.pagerKey)return;
  t.html=html;t.pagerKey=pagerKey;t.body.innerHTML=html;
  t.pager.textContent='';
  if(rows.length>PAGE){
    var info=document.createElement('span');
    info.textContent='rows '+(t.page*PAGE+1)+'–'+(t.page*PAGE+part.length)+' of '+rows.length+' ';
    t.pager.appendChild(info);
    [['◀ previous',-1],['next ▶',1]].forEach(function(b){
      var btn=document.createElement('button');btn.textContent=b[0];btn.disabled=t.page+b[1]<0||t.page+b[1]>=pages;
      btn.addEventListener('click',function(){t.page+=b[1];draw(t);});t.pager.appendChild(btn);});
  }
}
// Redraw every table with the rows `keep` lets through (null: all), `picked` ticked and
// `marked` ({energy: [ids], speed: [ids]}) the cells the sliders mark.
function set(ids){var s={};(ids||[]).forEach(function(id){s[id]=1;});return s;}
return {render:function(keep,picked,marked){marked=marked||{};var m={energy:set(marked.energy),speed:set(marked.speed)};
  tables.forEach(function(t){t.keep=keep;t.picked=picked||[];t.marked=m;draw(t);});},
        PAGE:PAGE};
};
